"""benchmarks/training.py runs and prints its two tables, with the channels-last floor for a
model with convolutions."""

from __future__ import annotations

import pytest

from tests.benchmarks import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("training")


@pytest.fixture(autouse=True)
def allocator_calls(script, monkeypatch) -> list[bool]:
    """The script's ``keep_freed_memory``, recorded instead of run (it would fix the malloc
    thresholds of the test process)."""
    calls: list[bool] = []
    monkeypatch.setattr(script, "keep_freed_memory", lambda: calls.append(True) or True)
    return calls


def _rows(out: str, first: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith(f"| {first} |")
    ]


@pytest.mark.slow
def test_both_models_print_rounds_parts_and_floors(script, capsys):
    args = "--models mlp cnn --scenarios krum --rounds 2 --warmup 1 --no-byzfl"
    script.main(args.split())
    out = capsys.readouterr().out
    assert "big batch CL (ms)" in out and "byzfl not run (--no-byzfl)" in out
    mlp, cnn = _rows(out, "mlp")[0], _rows(out, "cnn")[0]
    assert mlp[2] == cnn[2] == "krum" and mlp[-1] == "-"  # no convolution: no channels-last floor
    big_cnn, last_cnn, vec_cnn, ratio = float(cnn[-2]), float(cnn[-1]), float(cnn[4]), cnn[5]
    assert float(ratio.rstrip("x")) == pytest.approx(vec_cnn / min(big_cnn, last_cnn), rel=0.02)
    parts = [r for r in _rows(out, "cnn") if r[3] == "vectorised"]
    assert len(parts) == 1 and float(parts[0][-1]) > 0


@pytest.mark.slow
def test_the_alie_scenario_runs_on_request(script, capsys):
    args = "--models mlp --scenarios alie --rounds 2 --warmup 1 --no-byzfl"
    script.main(args.split())
    out = capsys.readouterr().out
    rows = _rows(out, "mlp")
    assert rows[0][2] == "alie" and float(rows[0][4]) > 0
    assert any(r[3] == "vectorised" and float(r[5]) > 0 for r in rows)  # the attack's part


def test_the_allocator_runs_as_the_command_line_unless_asked(script, capsys, allocator_calls):
    args = "--models mlp --scenarios average --rounds 1 --warmup 0 --no-byzfl --n 3"
    fast = args.split()
    script.main(fast)
    assert allocator_calls == [True]
    assert "- allocator: freed memory kept for reuse" in capsys.readouterr().out
    script.main([*fast, "--system-malloc"])
    assert allocator_calls == [True]  # not called again
    assert "- allocator: the C library's defaults" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [[], ["--system-malloc"]])
def test_a_misspelt_malloc_setting_gets_one_line(script, capsys, monkeypatch, flags) -> None:
    from byzlearn import allocator

    monkeypatch.setattr(script, "keep_freed_memory", lambda: allocator.setting() == "keep")
    monkeypatch.setenv(allocator.ENVIRONMENT, "sytem")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--quick", "--no-byzfl", *flags])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: BYZLEARN_MALLOC='sytem' is not a setting")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("--models foo", "invalid choice: 'foo'"),
        ("--rounds 0", "--rounds: must be >= 1, got 0"),
        ("--n 7 --scenarios krum --models mlp", "krum needs n >= 2f + 3, got n=7, f=5"),
    ],
)
def test_bad_arguments_get_one_line(script, capsys, args: str, message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--no-byzfl", "--warmup", "0", "--rounds", "1", *args.split()])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_variants_take_turns_of_block_rounds(script, monkeypatch) -> None:
    calls: list[str] = []
    parts = dict.fromkeys([*script.PARTS, "engine", "total"], 1e-3)

    def fake_round(trainer, clock):
        calls.append("vectorised" if trainer.config.engine.vectorise else "loop")
        return dict(parts)

    def fake_big(module, x, y):
        calls.append("big")
        return 1e-3

    monkeypatch.setattr(script, "_round", fake_round)
    monkeypatch.setattr(script, "_big_batch_seconds", fake_big)
    m = script.measure("mlp", 5, "average", rounds=3, warmup=1, block=2)
    turn = ["vectorised"] * 2 + ["loop"] * 2 + ["big"] * 2
    assert calls == turn + turn  # 4 rounds each, in turns of 2 (the MLP has no CL floor)
    assert m["vectorised"]["total"] == m["big"] == 1e-3
    calls.clear()
    script.measure("mlp", 5, "average", rounds=2, warmup=0, block=1)
    assert calls == ["vectorised", "loop", "big"] * 2


def test_block_must_be_positive(script, capsys) -> None:
    with pytest.raises(SystemExit):
        script.main(["--no-byzfl", "--rounds", "1", "--block", "0"])
    assert "--block: must be >= 1, got 0" in capsys.readouterr().err.strip().splitlines()[-1]


def test_rules_run_the_attacked_scenarios_a_row_each(script, capsys) -> None:
    args = "--models mlp --scenarios average krum --rules krum median --rounds 1 --warmup 0"
    script.main([*args.split(), "--no-byzfl", "--n", "13"])
    labels = [row[2] for row in _rows(capsys.readouterr().out, "mlp")]
    assert labels[:3] == ["average", "krum", "ipm+median"]  # the first table, then the parts
    assert script._label("alie", "mda") == "alie+mda" and script._label("alie", "krum") == "alie"


def test_an_unknown_rule_is_refused_before_any_measurement(script, capsys, monkeypatch) -> None:
    monkeypatch.setattr(script, "measure", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--no-byzfl", "--models", "mlp", "--rules", "krum", "nosuch"])
    assert exit_info.value.code == 2
    assert "--rules nosuch: invalid config: rule.name: unknown rule 'nosuch'" in (
        capsys.readouterr().err.strip().splitlines()[-1]
    )
