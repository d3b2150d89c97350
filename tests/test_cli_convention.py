"""One command-line convention (clipag.cli_options): the generators' common options mean the same everywhere, and
no parser of any clipag command accepts abbreviations."""

from __future__ import annotations

import argparse

import pytest

from clipag import cli_options
from clipag.cli import build_parser, main

GENERATORS = {"generate": ["a red apple"], "draw": ["a red apple"], "vqgan": ["a red apple"],
              "style": ["photo.png", "fire"]}
COMMON = {"count": 1, "seed": 0, "output": None, "model": "ViT-B/32", "device": None, "amp": "auto", "frames": None,
          "threads": None, "quiet": False}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: p for a in actions for name, p in a.choices.items()}


def _every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    from clipag.eval import build_parser as eval_parser
    from clipag.finetune.args import build_parser as finetune_parser

    found, todo = [], [("clipag", build_parser())]
    while todo:
        name, parser = todo.pop()
        found.append((name, parser))
        todo += [(f"{name} {sub}", p) for sub, p in _subparsers(parser).items()]
    return [*found, ("eval", eval_parser()), ("finetune", finetune_parser())]


def test_no_parser_accepts_abbreviations():
    parsers = _every_parser()
    assert {"clipag generate", "clipag draw", "clipag vqgan", "clipag style", "clipag prior build", "clipag run",
            "eval", "finetune"} <= {name for name, _ in parsers}
    for name, parser in parsers:
        assert parser.allow_abbrev is False, name


def test_demo_parser_accepts_no_abbreviations(capsys):
    from clipag.demo.__main__ import main as demo

    with pytest.raises(SystemExit) as stop:
        demo(["--qu"])  # argparse's default would take this for --quick and start a 3-minute run
    assert stop.value.code == 2 and "unrecognized arguments: --qu" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(GENERATORS))
def test_the_common_options_mean_the_same_in_every_generator(command):
    parser = _subparsers(build_parser())[command]
    args = parser.parse_args(GENERATORS[command])
    for key, default in COMMON.items():
        assert getattr(args, key) == default, (command, key)
    options = {option: action for action in parser._actions for option in action.option_strings}
    for flags, dest in ((("-n", "--count", "--n"), "count"), (("--seed",), "seed"), (("--steps",), "steps"),
                        (("-o", "--output"), "output"), (("--model",), "model"), (("--device",), "device"),
                        (("--amp",), "amp"), (("--frames",), "frames"), (("--threads",), "threads"),
                        (("-q", "--quiet"), "quiet")):
        for flag in flags:
            assert options[flag].dest == dest, (command, flag)
    assert options["--device"].help == cli_options.DEVICE_HELP
    parsed = parser.parse_args([*GENERATORS[command], "-n", "3", "--seed", "7", "--steps", "5", "-o", "x.png",
                                "--amp", "off", "-q"])
    assert (parsed.count, parsed.seed, parsed.steps, parsed.output, parsed.amp, parsed.quiet) == \
        (3, 7, 5, "x.png", "off", True)
    assert parser.parse_args([*GENERATORS[command], "--count", "2"]).count == 2


@pytest.mark.parametrize("command", list(GENERATORS))
def test_count_spellings_and_their_errors(command, capsys):
    """`clipag draw "x" --n 2` was 'ambiguous option: --n could match --negative, --normalize'; `clipag generate "x"
    -n 2` was 'unrecognized arguments'. Both now mean -n/--count; --n says it is deprecated."""
    parser = _subparsers(build_parser())[command]
    assert parser.parse_args([*GENERATORS[command], "--n", "2"]).count == 2
    assert "--n is deprecated; use -n/--count" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([*GENERATORS[command], "-n", "0"])
    assert "must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args([*GENERATORS[command], "--nega" if command == "draw" else "--se", "1"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_default_output_names_follow_one_pattern():
    assert cli_options.default_output(["A Red Apple!"], ".png") == "a-red-apple.png"
    assert cli_options.default_output(["A Red Apple!"], ".svg") == "a-red-apple.svg"
    assert cli_options.default_output(["photo", "an oil painting"], ".png") == "photo-an-oil-painting.png"
    from clipag.images import result_path

    assert str(result_path("out.svg", 3, several=False)) == "out.svg"
    assert str(result_path("out.svg", 3, several=True)) == "out-003.svg"
    assert str(result_path("d/out.png", 0, several=True, compare=True)) == "d/out-000-compare.png"


def test_draw_defaults_to_the_prompt_as_file_name(tmp_path, monkeypatch, capsys):
    """Every generator names its default output after the prompt (draw wrote drawing.svg)."""
    from generate_fixtures import one_thread, save_hub_folder

    model = save_hub_folder(tmp_path / "model", size=32)
    monkeypatch.chdir(tmp_path)
    with one_thread():
        assert main(["draw", "A Red Apple!", "--model", str(model), "--steps", "1", "--strokes", "4", "--size", "32",
                     "--device", "cpu", "-q"]) == 0
    assert (tmp_path / "a-red-apple.svg").is_file()
    assert capsys.readouterr().out.split() == ["a-red-apple.svg"]


def test_eval_and_finetune_share_the_device_rule(capsys):
    from clipag.eval import build_parser as eval_parser
    from clipag.finetune.args import build_parser as finetune_parser

    assert eval_parser().parse_args(["--model", "m", "--data", "synthetic"]).device is None  # resolved at run time
    eval_help = " ".join(eval_parser().format_help().split())
    finetune_help = " ".join(finetune_parser().format_help().split())
    assert "--device DEVICE torch device (default: cuda if available, else cpu)" in eval_help
    assert "(default: cuda if available (cuda:LOCAL_RANK under torchrun), else cpu" in finetune_help


def test_help_texts_state_defaults_once_and_describe_commands(capsys):
    from clipag.eval import build_parser as eval_parser
    from clipag.finetune.args import build_parser as finetune_parser

    for parser in (eval_parser(), finetune_parser()):
        text = " ".join(parser.format_help().split())
        assert "(default: None" not in text
        assert text.count("tab for .tsv, comma otherwise") == 1
        assert "DESIGN" not in text
    for command in ("run", "import", "download"):
        assert _subparsers(build_parser())[command].description, command
