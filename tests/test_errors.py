"""Every mistake a user can make at the command line ends as one line on stderr, `scoresde <command>: error: ...`,
with exit code 2 and no traceback, before any expensive work."""

import pytest

from scoresde.lightning.cli import main


def _cases(tmp_path, toy_ckpt):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(toy_ckpt.read_bytes()[:1000])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    ck, out = str(toy_ckpt), str(tmp_path / "out")
    return [
        # (argv, the message's first words)
        (["sample", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", out], "checkpoint"),
        (["sample", "--ckpt", str(truncated), "--out", out], f"{truncated} is not a readable checkpoint"),
        (["sample", "--ckpt", str(text), "--out", out], f"{text} is not a readable checkpoint"),
        (["sample", "--ckpt", ck, "--classifier", ck, "--class", "1", "--out", out], f"{ck} is a score model checkpoint"),
        (["sample", "--ckpt", ck, "--steps", "0", "--out", out], "--steps must be a positive integer"),
        (["sample", "--ckpt", ck, "--n", "0", "--out", out], "--n and --batch-size must be positive"),
        (["sample", "--ckpt", ck, "--out", str(a_file)], f"--out {a_file} is a file"),
        (["sample", "--ckpt", ck, "--solver", "dpm", "--out", out], "unknown solver 'dpm'"),
        (["sample", "--ckpt", ck, "--solver", "ddim", "--order", "2", "--out", out], "solver 'ddim' has no option"),
        (["likelihood", "--ckpt", ck, "--limit", "-5", "--out", out], "--limit must be a positive number"),
        (["likelihood", "--ckpt", ck, "--data", str(tmp_path / "nope.yaml"), "--out", out], "--data"),
        (["interpolate", "--ckpt", ck, "--pairs", "0", "--out", out], "--pairs must be >= 1"),
        (["inpaint", "--ckpt", ck, "--method", "magic", "--out", out], "unknown inpainting method 'magic'"),
        (["nonsense"], "unknown command 'nonsense'"),
    ]


def test_every_bad_input_gets_one_line_and_exit_code_2(toy_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SCORESDE_DEBUG", raising=False)
    cases = _cases(tmp_path, toy_ckpt)
    assert len(cases) >= 14
    for argv, first_words in cases:
        with pytest.raises(SystemExit) as err:
            main([*argv, "--progress", "false"] if argv[0] != "nonsense" else argv)
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.strip()]
        name = argv[0] if argv[0] != "nonsense" else ""
        prefix = f"scoresde {name}: error: " if name else "scoresde: error: "
        assert err.value.code == 2, (argv, captured.err)
        assert "Traceback" not in captured.err, (argv, captured.err)
        assert len(lines) == 1 and lines[0].startswith(prefix + first_words), (argv, lines)


def test_scoresde_debug_shows_the_traceback(toy_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESDE_DEBUG", "1")
    with pytest.raises(ValueError, match="--steps must be a positive integer"):
        main(["sample", "--ckpt", str(toy_ckpt), "--steps", "0", "--out", str(tmp_path)])
