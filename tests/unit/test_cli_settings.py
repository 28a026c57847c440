"""Flags from BANDITSPEC_* variables and a --config YAML file: the command line wins, then the
environment, then the file, then the default."""

from __future__ import annotations

import pytest

from banditspec.cli import settings
from banditspec.cli.main import build_parser


def parse(argv: list[str], environ: dict[str, str] | None = None):
    parser = build_parser()
    settings.apply(parser, argv, environ or {})
    return parser.parse_args(argv)


def test_env_names_follow_the_flags():
    assert settings.env_name("--max-sessions") == "BANDITSPEC_MAX_SESSIONS"
    assert settings.env_name("--model-free-gammas") == "BANDITSPEC_MODEL_FREE_GAMMAS"


def test_the_environment_sets_a_flag_and_the_command_line_wins():
    assert parse(["serve-target"]).max_sessions == 64
    assert parse(["serve-target"], {"BANDITSPEC_MAX_SESSIONS": "8"}).max_sessions == 8
    assert parse(["serve-target", "--max-sessions", "4"], {"BANDITSPEC_MAX_SESSIONS": "8"}).max_sessions == 4
    assert parse(["serve-target"], {"BANDITSPEC_HOST": "0.0.0.0"}).host == "0.0.0.0"


def test_repeatable_and_switch_flags_from_the_environment():
    args = parse(
        ["serve-draft"], {"BANDITSPEC_DRAFTER": "pld=prompt_lookup  sfx=suffix", "BANDITSPEC_MODEL_ROOT": "/a /b"}
    )
    assert args.drafter == ["pld=prompt_lookup", "sfx=suffix"] and args.model_root == ["/a", "/b"]
    assert parse(["generate", "hi"], {"BANDITSPEC_CHAT": "on"}).chat is True
    assert parse(["generate", "hi"], {"BANDITSPEC_CHAT": "0"}).chat is False


def test_a_config_file_sets_flags_below_the_environment(tmp_path):
    config = tmp_path / "target.yaml"
    config.write_text("max-sessions: 12\nmax_batch_tokens: 128\nhost: 0.0.0.0\n")
    args = parse(["serve-target", "--config", str(config)])
    assert (args.max_sessions, args.max_batch_tokens, args.host) == (12, 128, "0.0.0.0")
    assert parse(["serve-target", "--config", str(config)], {"BANDITSPEC_MAX_SESSIONS": "3"}).max_sessions == 3
    assert parse(["serve-target", "--config", str(config), "--max-sessions", "5"]).max_sessions == 5


def test_a_config_file_may_hold_a_section_per_command(tmp_path):
    config = tmp_path / "stack.yaml"
    config.write_text("serve-target:\n  max-sessions: 7\nserve-draft:\n  drafter: [pld=prompt_lookup, sfx=suffix]\n")
    assert parse(["serve-target", f"--config={config}"]).max_sessions == 7
    assert parse(["serve-draft", "--config", str(config)]).drafter == ["pld=prompt_lookup", "sfx=suffix"]


def test_bad_values_and_unknown_keys_are_refused_with_their_source(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["serve-target"], {"BANDITSPEC_MAX_SESSIONS": "many"})
    assert "BANDITSPEC_MAX_SESSIONS" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("max-sesions: 3\n")
    with pytest.raises(SystemExit):
        parse(["serve-target", "--config", str(config)])
    assert "no flag --max-sesions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["serve-target"], {"BANDITSPEC_VERIFY_PADDING": "sometimes"})
    assert "choose from" in capsys.readouterr().err
