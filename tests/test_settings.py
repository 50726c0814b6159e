"""engine/settings.py: every section refuses a bad value with a clear message and saves
nothing, a stored dict that no longer fits opens with the defaults, the memories' full
settings are checked when built, and the flags made from the fields parse back into
the same values."""
import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from engine.settings import (KNN, KNNSettings, Matrix, MatrixSettings, Recall, Settings,
                             SettingsError, Thoughts, add_flags, changes)
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store(tmp_path):
    s = Store.create(tmp_path / "novel")
    yield s
    s.close()


# -- a novel's sections: refused with a message, nothing saved ---------------------------
@pytest.mark.parametrize("name,bad,words", [
    ("writing", dict(temperature=9), ["Sampling temperature", "0.0..5.0", "not 9"]),
    ("writing", dict(max_tokens="many"), ["New tokens per continue", "many"]),
    ("thoughts", dict(mode="loud"), ["thoughts mode 'loud'", "prompt or self"]),
    ("thoughts", dict(every="3"), ["16 to 4,096", "'3'"]),
    ("thoughts", dict(on="maybe"), ["on or off", "maybe"]),
    ("recall", dict(k=1000), ["Direct hits", "0..100", "not 1,000"]),
    ("recall", dict(share=float("nan")), ["Share of the prompt budget", "nan"]),
    ("knn", dict(k=0), ["Neighbours per query head", "1..1,024", "not 0"]),
    ("knn", dict(layers="ten"), ["'ten' is not a layer"]),
    ("matrix", dict(slots=100), ["multiple of 64"]),
    ("matrix", dict(layer=-1), ["reads the matrix", "0 or more", "not -1"]),
    ("matrix", dict(rows=5000), ["Memory tokens read", "1..1,024"]),
])
def test_a_bad_value_is_refused_clearly_and_nothing_is_saved(store, name, bad, words):
    settings = Settings(store)
    with pytest.raises(SettingsError) as e:
        settings.set(name, **bad)
    for w in words:
        assert w in str(e.value)
    assert not settings.stored(name) and store.get_setting(name) is None


def test_a_good_change_is_saved_and_read_back(store):
    settings = Settings(store)
    assert settings.set("knn", on=True, layers="3-1", k="8") == KNN(on=True, layers=(1, 2, 3),
                                                                    k=8)
    assert Settings(store).get("knn") == KNN(on=True, layers=(1, 2, 3), k=8)
    with pytest.raises(SettingsError):  # a refused change leaves the saved one as it was
        settings.set("knn", k=5000)
    assert settings.get("knn").k == 8


def test_a_stored_dict_with_an_unknown_key_and_an_invalid_value_opens_with_the_default(store):
    store.set_setting("recall", {"k": 1000, "share": 0.5, "retired_knob": 3})
    store.set_setting("matrix", {"on": True, "slots": 100, "rows": 8, "colour": "red"})
    store.set_setting("knn", {"on": True, "layers": "x-y", "k": 16})
    settings = Settings(store)
    assert settings.get("recall") == Recall(share=0.5)  # k back to its default
    assert settings.get("matrix") == Matrix(on=True, rows=8)
    assert settings.get("knn") == KNN(on=True, k=16)
    assert KNNSettings.from_dict({"k": 0, "nprobe": 4, "old": 1}) == KNNSettings(nprobe=4)
    assert MatrixSettings.from_dict({"norm": "sideways", "seed": 3}) == MatrixSettings(seed=3)


def test_the_writers_choice_and_the_memory_share_one_default():
    assert KNN().k == KNNSettings().k and KNN().layers == KNNSettings().layers
    for name in ("layer", "slots", "rows"):
        assert getattr(Matrix(), name) == getattr(MatrixSettings(), name)
    with pytest.raises(SettingsError, match="multiple of 64"):
        MatrixSettings(slots=100)  # and one rule for both
    with pytest.raises(SettingsError, match="multiple of 64"):
        Matrix(slots=100)


# -- the memories' full settings: checked when built -----------------------------------------
@pytest.mark.parametrize("cls,bad,words", [
    (KNNSettings, dict(k=0), ["1..1,024", "not 0"]),
    (KNNSettings, dict(k=2000), ["1..1,024"]),
    (KNNSettings, dict(mode="remember"), ["knn mode 'remember'", "attend or inject"]),
    (KNNSettings, dict(heads=0), ["(0, 1]"]),
    (KNNSettings, dict(search_every=0), ["1 or more"]),
    (KNNSettings, dict(overlap=-1), ["0 or more"]),
    (KNNSettings, dict(approx="annoy"), ["ivf or hnsw"]),
    (KNNSettings, dict(layer_span=(0.9, 0.2)), ["from < to"]),
    (KNNSettings, dict(inject={"zz": 1}), ["Unknown inject override 'zz'"]),
    (KNNSettings, dict(gate_bias=float("inf")), ["inf"]),
    (MatrixSettings, dict(slots=96), ["multiple of 64"]),
    (MatrixSettings, dict(norm="max"), ["rows or decay or none"]),
    (MatrixSettings, dict(decay=2.0), ["0.0..1.0"]),
    (MatrixSettings, dict(seed=-1), ["0 or more"]),
])
def test_memory_settings_refuse_an_out_of_range_field_when_built(cls, bad, words):
    with pytest.raises(SettingsError) as e:
        cls(**bad)
    for w in words:
        assert w in str(e.value)
    with pytest.raises(SettingsError):  # and in a checked copy
        cls().changed(**bad)
    assert not hasattr(cls, "with_")


def test_memory_settings_keep_their_values_and_types():
    s = KNNSettings(k="8", layers=[3, 1], inject={"k": "3", "r": 1},
                    gate_file="  ")
    assert (s.k, s.layers, s.inject, s.gate_file) == (8, (1, 3), {"k": 3, "r": 1.0}, None)
    assert s.changed(k=None) is not s and s.changed(k=None) == s  # None: unchanged
    m = MatrixSettings(layer=2, slots=128)
    assert MatrixSettings(**m.to_dict()) == m  # what a matrix file stores reads back
    with pytest.raises(TypeError, match="unknown knn setting"):
        KNNSettings().changed(neighbours=3)


# -- flags made from the fields ------------------------------------------------------------
def _parser(*sections, prefix=""):
    p = argparse.ArgumentParser(exit_on_error=False)
    for cls in sections:
        add_flags(p, cls, prefix=prefix)
    return p


def test_knn_flags_parse_back_into_the_same_values():
    args = _parser(KNNSettings, prefix="knn-").parse_args(["--knn-k", "8", "--knn-layers", "1-2"])
    assert changes(args, KNNSettings, "knn-") == {"k": 8, "layers": (1, 2)}
    assert KNNSettings().changed(**changes(args, KNNSettings, "knn-")) == \
        KNNSettings(k=8, layers=(1, 2))


def test_every_field_of_a_section_round_trips_through_its_flags():
    want = KNNSettings(mode="inject", layers=(2, 5), layer_span=(0.25, 0.75), k=7, heads=0.5,
                       search_every=2, position="exact", gap=4, gate=True, gate_bias=-2.5,
                       gate_file="g.safetensors", preset="steer",
                       inject={"r": 0.2, "layer_fractions": (0.5, 0.7)},
                       approx_threshold=100, approx="hnsw", nprobe=3, ef_search=9, chunk=64,
                       overlap=16)
    argv = ["--knn-mode", "inject", "--knn-layers", "2,5", "--knn-layer-span", "0.25,0.75",
            "--knn-k", "7", "--knn-heads", "0.5", "--knn-search-every", "2",
            "--knn-position", "exact", "--knn-gap", "4", "--knn-gate", "--knn-gate-bias",
            "-2.5", "--knn-gate-file", "g.safetensors", "--knn-preset", "steer",
            "--knn-inject", "r=0.2,layer_fractions=0.5/0.7", "--knn-approx-threshold", "100",
            "--knn-approx", "hnsw", "--knn-nprobe", "3", "--knn-ef-search", "9",
            "--knn-chunk", "64", "--knn-overlap", "16"]
    args = _parser(KNNSettings, prefix="knn-").parse_args(argv)
    assert KNNSettings().changed(**changes(args, KNNSettings, "knn-")) == want
    got = _parser(MatrixSettings, prefix="matrix-").parse_args(
        ["--matrix-layer", "3", "--matrix-slots", "128", "--matrix-norm", "decay",
         "--matrix-decay", "0.1", "--matrix-read-bias", "-1"])
    assert MatrixSettings().changed(**changes(got, MatrixSettings, "matrix-")) == \
        MatrixSettings(layer=3, slots=128, norm="decay", decay=0.1, read_bias=-1.0)
    assert changes(_parser(KNNSettings, prefix="knn-").parse_args([]), KNNSettings,
                   "knn-") == {}  # nothing given: nothing changes


def test_the_write_and_matrix_commands_flags_come_from_the_novels_sections():
    from engine.cli.main import parser

    argv = ["write", "--project", "p", "--plan-first", "--note-every", "64",
            "--thought-mode", "self", "--thought-adapter", ""]
    got = changes(parser(argv).parse_args(argv), Thoughts)
    assert got == {"plan_first": True, "every": 64, "mode": "self", "adapter": ""}
    assert Thoughts().changed(**got) == Thoughts(plan_first=True, every=64, mode="self")
    argv = ["matrix", "--project", "p", "set", "--layer", "2", "--slots", "128", "--rows", "8"]
    got = changes(parser(argv).parse_args(argv), Matrix)
    assert Matrix().changed(**got) == Matrix(layer=2, slots=128, rows=8)


def test_a_flag_given_as_none_still_counts_as_given():
    """'--adapter ""' means "no adapter", not "leave it as it is"."""
    args = _parser(Matrix).parse_args(["--adapter", ""])
    assert args.adapter == ""


@pytest.mark.parametrize("argv,words", [
    (["--knn-k", "0"], ["--knn-k", "1..1024", "not 0"]),
    (["--knn-k", "many"], ["--knn-k", "'many' is not a whole number"]),
    (["--knn-heads", "0"], ["--knn-heads", "(0, 1]"]),
    (["--knn-search-every", "0"], ["--knn-search-every", "1 or more"]),
    (["--knn-gate-bias", "nan"], ["--knn-gate-bias", "finite number"]),
    (["--knn-mode", "remember"], ["--knn-mode", "invalid choice", "attend"]),
    (["--knn-layers", "ten"], ["--knn-layers", "'ten' is not a layer"]),
    (["--knn-inject", "zz=1"], ["--knn-inject", "not KEY=VALUE"]),
    (["--matrix-slots", "100"], ["--matrix-slots", "multiple of 64"]),
    (["--matrix-decay", "3"], ["--matrix-decay", "0..1"]),
])
def test_the_cli_names_the_flag_and_what_it_accepts(capsys, argv, words):
    from engine.cli.main import parser

    full = ["score", "--project", "p", "--text-file", "f", *argv]
    with pytest.raises(SystemExit) as e:
        parser(full).parse_args(full)
    assert e.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err


def test_a_hand_made_namespace_is_checked_and_the_flag_named():
    from engine.score import settings_from_args

    with pytest.raises(SettingsError, match="--knn-k: .*1..1,024"):
        settings_from_args(argparse.Namespace(knn_k=0))
    with pytest.raises(SettingsError, match="--knn-layers: layers must lie in 0..3"):
        settings_from_args(argparse.Namespace(knn_layers="2-9"), depth=4)
    s = settings_from_args(argparse.Namespace(knn_gate_file="g.safetensors"))
    assert s.gate and s.gate_file == "g.safetensors"  # a gate file turns the gate on


def test_the_settings_module_needs_neither_torch_nor_numpy():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['numpy'] = None; "
            "from engine.settings import KNNSettings, MatrixSettings; "
            "print(KNNSettings().read_layers(12), MatrixSettings().resolved_layer(12))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["(6,", "7,", "8,", "9,", "10,", "11)", "3"]
