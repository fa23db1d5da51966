"""A Flower App (ServerApp + ClientApp) on scikit-learn's digits with byzlearn's strategy."""
