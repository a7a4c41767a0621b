"""The benchmarks' own tools (issue 15): both sides on one torch build, the floor's FLOP counts, the CPU line and
the profile's categories. The benchmarks themselves are never tests (too slow, machine-dependent); these check
what their numbers rest on, in a few seconds.
"""

import importlib.util
import stat
import sys
import textwrap
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """A benchmarks/ script as a module (they import each other by path, as `python benchmarks/x.py` does)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def common():
    return load("common")


def released_config(name: str):
    from transformers_setr.presets import PRESETS
    from transformers_setr.training import config_for_preset

    return config_for_preset(PRESETS[name])


def fake_mmseg_python(tmp_path: Path, torch_build: str) -> Path:
    """An 'interpreter' that answers the worker protocol's hello with the given torch build, and quits."""
    responder = tmp_path / "responder.py"
    responder.write_text(
        textwrap.dedent(
            f"""
            import json, sys
            for line in sys.stdin:
                op = json.loads(line)["op"]
                answer = {{"mmseg_version": "1.2.2", "torch_build": {torch_build!r}}} if op == "hello" else {{}}
                print("@@reply " + json.dumps(answer), flush=True)
                if op == "quit":
                    break
            """
        )
    )
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{responder}"\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return python


def test_mmseg_on_another_torch_build_is_refused(common, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "MMSEG_TORCH", {})
    python = fake_mmseg_python(tmp_path, "2.13.0 (git 0123456789)")
    with pytest.raises(SystemExit) as refused:
        common.MmsegWorker(python, threads=1)
    message = str(refused.value)
    assert message.startswith("error: ") and "\n" not in message
    assert str(python) in message and "2.13.0" in message and torch.__version__ in message
    assert "--allow-torch-mismatch" in message


def test_allowed_torch_mismatch_warns_and_says_so_in_the_header(common, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "MMSEG_TORCH", {})
    with common.MmsegWorker(fake_mmseg_python(tmp_path, "2.13.0 (git 0123456789)"), 1, allow_torch_mismatch=True):
        pass
    assert "WARNING" in capsys.readouterr().err
    line = common.machine_line(1)
    assert "torch differs" in line and "2.13.0" in line and torch.__version__ in line


def test_same_torch_build_is_named_once_for_both_sides(common, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "MMSEG_TORCH", {})
    with common.MmsegWorker(fake_mmseg_python(tmp_path, common.torch_build()), threads=1) as worker:
        assert worker.version == "1.2.2"
    assert "on both sides" in capsys.readouterr().out
    assert f"torch {torch.__version__} (git {torch.version.git_version[:10]}) on both sides" in common.machine_line(1)


def test_cpu_line_names_the_matrix_extensions(common, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    xeon = (
        "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
    )
    cpuinfo.write_text(xeon + "\n\nmodel name\t: second\nflags\t\t: fpu\n")
    assert common.cpu_model_and_flags(cpuinfo)[0] == "Intel(R) Xeon(R) Platinum 8480+"
    assert common.cpu_extensions(cpuinfo).startswith("AVX2, AVX-512, AVX512_BF16, AMX, AMX-BF16; torch CPU")
    cpuinfo.write_text("model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert common.cpu_extensions(cpuinfo).startswith("AVX2, AVX-512, AVX512_BF16, no AMX; torch CPU")


def test_inference_flops_are_vit_large_counted_by_hand(common):
    """Naive ADE20K at 512x512: 1025 tokens (cls kept) of width 1024 through 24 layers (q, k, v, o projections and
    a 4096-wide MLP; attention's two token-by-token matmuls), a 16x16 patch embedding of 32x32 patches, then the
    head's 1x1 conv to 256 channels and the 150-class classifier at 32x32. 2 FLOPs per multiply-add."""
    tokens, width, mlp, layers, patches = 1025, 1024, 4096, 24, 32 * 32
    expected = {
        "GEMMs": layers * (4 * 2 * tokens * width * width + 2 * 2 * tokens * width * mlp),
        "attention (SDPA)": layers * 2 * 2 * tokens * tokens * width,
        "patch embedding conv": 2 * 3 * 16 * 16 * width * patches,
        "decoder convolutions": 2 * width * 256 * patches + 2 * 256 * 150 * patches,
    }
    config = released_config("setr-naive-vit-large-ade20k-512")
    counted = common.inference_gflop_by_kind(config, 512, 512, "whole")
    assert counted == pytest.approx({kind: value / 1e9 for kind, value in expected.items()}, rel=1e-12)
    assert common.count_inference_gflop(config, 512, 512, "whole") == pytest.approx(724.586, abs=1e-3)
    # Slide at 512x683: two 512x512 windows.
    assert common.count_inference_gflop(config, 512, 683, "slide") == pytest.approx(2 * 724.586, abs=2e-3)


def test_training_flops_count_forward_and_backward(common):
    """A matmul's backward is two matmuls of its size (gradients of both operands), so a training step at batch 2
    does 3 x 2 x the inference matmuls; the auxiliary heads add convolutions only."""
    config = released_config("setr-pup-vit-large-ade20k-512")
    inference = common.inference_gflop_by_kind(config, 512, 512, "whole")
    training = common.training_gflop_by_kind(config, 2, 512, 512)
    assert training["GEMMs"] == pytest.approx(3 * 2 * inference["GEMMs"], rel=1e-12)
    assert training["attention (SDPA)"] == pytest.approx(3 * 2 * inference["attention (SDPA)"], rel=1e-12)
    assert training["decoder convolutions"] > 3 * 2 * inference["decoder convolutions"]  # plus the auxiliary heads


def test_profile_categories(common):
    """addmm copies its bias into the output before the matmul: GEMM time. Autocast's casts are casts, wherever."""
    profile = load("profile_inference")
    linear, inputs = torch.nn.Linear(64, 32), torch.randn(16, 64)

    def forward():
        linear(inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            linear(inputs)
        torch.nn.functional.gelu(inputs)
        if "oneDNN" in common.gemm_libraries():  # the model's CPU inference matmul
            common.onednn_mm(inputs, linear.weight)

    with torch.inference_mode():
        by_category, by_operator = profile.breakdown(profile.profile_call(forward))
    categories = {(name, caller): category for name, caller, category, _ in by_operator}
    assert categories["aten::addmm", "aten::linear"] == "GEMMs"
    assert categories["aten::copy_", "aten::addmm"] == "GEMMs"
    assert categories["aten::_to_copy", "aten::to"] == "copies and casts"
    assert categories["aten::gelu", "-"] == "LayerNorm / GELU / softmax"
    if "oneDNN" in common.gemm_libraries():
        assert categories["mkldnn::_linear_pointwise", "-"] == "GEMMs"
    assert {where for _, where in by_category} == {"outside modules"}


def test_floor_is_the_fastest_matmul_library_and_the_onednn_matmul_is_a_matmul(common):
    a, b = torch.randn(48, 32, dtype=torch.float64).float(), torch.randn(32, 40).float()
    libraries = common.gemm_libraries()
    assert "torch.mm" in libraries
    for matmul in libraries.values():
        torch.testing.assert_close(matmul(a, b), a @ b, rtol=1e-5, atol=1e-5)
    floor = common.GemmFloor(size=64, dtypes=("fp32",))
    floor.measure()
    floor.measure()
    assert all(len(times) == 2 for times in floor.times["fp32"].values())
    fastest = max(floor.library_rate("fp32", library) for library in libraries)
    assert floor.rate("fp32") == fastest
    assert floor.multiple(2 * floor.seconds(1.0, "fp32"), 1.0, "fp32") == "2.00"
    note = floor.note(threads=2)
    assert all(library in note for library in libraries) and "64^3 on 2 threads" in note


def test_gpu_figures_runs_on_cpu_and_writes_one_json(tmp_path):
    """`gpu_figures.py --device cpu --smoke` (the GPU script's own check): every row of the issue's table, the seed's
    Mem (GB) next to the training rows, the goals, one JSON file and no temporary left."""
    import json

    output = tmp_path / "figures.json"
    load("gpu_figures").main(
        ["--device", "cpu", "--smoke", "--decoders", "pup", "--images", "1", "--repeats", "1", "--steps", "1",
         "--output", str(output)]
    )  # fmt: skip
    assert [path.name for path in tmp_path.iterdir()] == ["figures.json"]
    figures = json.loads(output.read_text())
    cases = {(row["mode"], row["dtype"], row["batch"]) for row in figures["inference"]}
    assert cases == {(m, d, b) for m in ("whole", "slide") for d in ("fp32", "bf16") for b in (1, 8)}
    assert all(row["images_per_second"] > 0 and row["gflop_per_image"] > 0 for row in figures["inference"])
    slide = next(row for row in figures["inference"] if row["mode"] == "slide")
    whole = next(row for row in figures["inference"] if row["mode"] == "whole")
    assert slide["gflop_per_image"] > whole["gflop_per_image"]  # overlapping windows: more work than one pass
    assert [(row["dtype"], row["batch_per_gpu"], row["seed_mem_gb"]) for row in figures["training"]] == [
        ("bf16", 2, 19.54),  # the seed's PUP ADE20K row: 16 images on 8 GPUs, Mem (GB) 19.54
        ("fp32", 2, 19.54),
    ]
    assert figures["training"][0]["peak_allocated_gib"] is None and figures["peak_bf16_tflops"] is None  # CPU
    assert figures["goals"]["slide_bf16_images_per_second"] == 60.0 and figures["goals"]["training_mfu"] == 0.4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "0"], "--images must be at least 1"),
        (["--device", "warp-drive"], "is not a torch device"),
        (["--peak-tflops", "-3"], "--peak-tflops must be positive"),
    ],
)
def test_gpu_figures_refuses_bad_options_in_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        load("gpu_figures").main(["--device", "cpu", "--output", str(tmp_path / "x.json"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_figures_without_cuda_says_so(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        load("gpu_figures").main(["--output", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_training_step_refuses_an_unknown_before_revision_at_once(monkeypatch, capsys):
    """`--before` is checked before the minutes of building mmseg's model (issue 25)."""
    bench = load("bench_training_step")
    monkeypatch.setattr(sys, "argv", ["bench_training_step.py", "--sizes", "vit-l", "--before", "no-such-revision"])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == "bench_training_step.py: error: --before no-such-revision: no such git revision or folder"
