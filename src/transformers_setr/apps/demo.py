"""`setr demo`: a Gradio app to try SETR models in a browser (the `[demo]` extra).

    setr demo --model converted/setr-pup-ade20k --model converted/setr-naive-cityscapes
    python scripts/demo.py --model DIR --port 7860

Upload a photo or pick one of scikit-image's photographs, choose the model and the inference mode, and see the
overlay with its legend, a table of the classes present and the time taken. It runs offline (local folders, no
analytics, no web fonts) and on the CPU unless `--device` says otherwise. The segmentation is `setr segment`'s.
"""

import argparse
import html
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from .._imports import MissingExtraError, require
from ..inference.predict import INFERENCE_MODES
from . import OneLineArgumentParser, segment

EXAMPLE_PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "camera")  # scikit-image's data, shipped with the package
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no request to a font server


class ModelCache:
    """The models of the dropdown, loaded on first use and kept; one forward at a time per process."""

    def __init__(self, names: list[str], device: str):
        self.names = names
        self.device = segment.pick_device(device)
        self.loaded: dict[str, tuple] = {}
        self.lock = threading.Lock()

    def get(self, name: str):
        if name not in self.names:
            raise ValueError(f"unknown model {name!r}")
        if name not in self.loaded:
            self.loaded[name] = segment.load_model(name, self.device)
        return self.loaded[name]


def write_example_photographs(folder: Path) -> list[Path]:
    """scikit-image's photographs as JPEG files for the examples (none when scikit-image is missing)."""
    try:
        from skimage import data
    except ImportError:
        return []
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in EXAMPLE_PHOTOGRAPHS:
        path = folder / f"{name}.jpg"
        if not path.is_file():
            segment.write_bytes_atomically(path, _jpeg_bytes(Image.fromarray(getattr(data, name)())))
        paths.append(path)
    return paths


def _jpeg_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def model_label(name: str) -> str:
    """A folder by its name (the page need not show where it lives), a Hub id as it is."""
    return Path(name).name if Path(name).is_dir() else name


def legend_html(classes: list[dict], palette) -> str:
    items = "".join(
        f'<li><span class="swatch" style="background: rgb{tuple(palette[c["id"]])}"></span>'
        f"{html.escape(str(c['label']))} <small>{100 * c['share']:.1f}%</small></li>"
        for c in classes
    )
    return f'<ul class="setr-legend">{items}</ul>'


def segment_photo(cache: ModelCache, path: str | None, model_name: str, mode: str, alpha: float = 0.5):
    """(overlay, legend HTML, class table rows, timing text) for one uploaded file; `ValueError` naming the
    problem for a file that is not a usable image."""
    if not path:
        raise ValueError("upload an image or pick an example first")
    image = segment.load_image(segment.ImageSource(str(path), Path(path).stem))
    with cache.lock:
        model, processor = cache.get(model_name)
        start = time.perf_counter()
        (labels,) = segment.predict_label_maps(model, processor, [image], mode)
        elapsed = time.perf_counter() - start
    config = model.config
    id2label = config.prediction_id2label  # a binary model: background and its class
    palette = segment.palette_of(config)
    overlay = segment.render_overlay(image, labels, config, segment.SegmentOptions(alpha=alpha))
    classes = segment.class_shares(labels, id2label)
    rows = [[c["id"], c["label"], round(100 * c["share"], 2)] for c in classes]
    timing = f"{image.width}×{image.height} segmented in {elapsed:.2f} s ({mode}, {cache.device.type})"
    return overlay, legend_html(classes, palette), rows, timing


def build_app(model_names: list[str], device: str = "cpu", examples_folder: Path | None = None):
    """The Gradio Blocks app (not launched). The first model is loaded now, so that a wrong folder fails at once."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    cache = ModelCache(model_names, device)
    first_model, _ = cache.get(model_names[0])
    examples = write_example_photographs(examples_folder) if examples_folder is not None else []

    def run(path, model_name, mode, alpha):
        try:
            return segment_photo(cache, path, model_name, mode, alpha)
        except (ValueError, segment.InputError) as error:
            raise gr.Error(str(error)) from None

    css = (
        ".setr-legend{list-style:none;padding:0;columns:2}.setr-legend li{margin:2px 0}"
        ".swatch{display:inline-block;width:14px;height:14px;margin-right:6px;border:1px solid #333;"
        "vertical-align:middle}"
    )
    with gr.Blocks(title="SETR semantic segmentation", analytics_enabled=False) as app:
        gr.Markdown("# SETR semantic segmentation\nUpload a photo or pick an example, then press **Segment**.")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(type="filepath", label="Photo", elem_id="input-image", sources=["upload"])
                model_choice = gr.Dropdown(
                    [(model_label(name), name) for name in model_names],
                    value=model_names[0],
                    label="Model",
                    elem_id="model",
                )
                mode = gr.Radio(
                    list(INFERENCE_MODES),
                    value=first_model.config.inference_mode,
                    label="Inference mode",
                    elem_id="mode",
                )
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity")
                button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[photo], label="Photographs (scikit-image)")
            with gr.Column():
                overlay = gr.Image(label="Overlay", type="pil", elem_id="overlay", format="png")
                timing = gr.Markdown(elem_id="timing")
                legend = gr.HTML(elem_id="legend")
                table = gr.Dataframe(
                    headers=["id", "class", "share %"], label="Classes present", elem_id="class-table"
                )
        button.click(run, inputs=[photo, model_choice, mode, alpha], outputs=[overlay, legend, table, timing])
    app.setr_launch_options = {  # what `main` passes to launch (Gradio 6 takes the theme and CSS there)
        "theme": gr.themes.Default(font=SYSTEM_FONTS, font_mono=["ui-monospace", "monospace"]),
        "css": css,
        "allowed_paths": [str(examples_folder)] if examples_folder is not None else None,
    }
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="setr demo", description="A browser demo of SETR models (Gradio).")
    parser.add_argument(
        "--model", action="append", required=True, help="a model folder or Hub id; repeat for a choice of models"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    parser.add_argument("--examples_dir", default=None, help="where to write the example photographs (a temp folder)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        require("gradio", "the demo")
    except MissingExtraError as error:
        print(f"setr demo: error: {error}", file=sys.stderr)
        return 2
    examples = Path(args.examples_dir) if args.examples_dir else Path(tempfile.mkdtemp(prefix="setr-demo-"))
    try:
        return _serve(args, examples)
    finally:
        if not args.examples_dir:  # the temporary folder this run made
            shutil.rmtree(examples, ignore_errors=True)


def _serve(args: argparse.Namespace, examples: Path) -> int:
    try:
        app = build_app(args.model, args.device, examples)
    except ValueError as error:
        print(f"setr demo: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    try:
        app.launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            inbrowser=False,
            show_error=True,
            ssr_mode=False,
            **app.setr_launch_options,
        )
    except OSError as error:
        print(f"setr demo: error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
