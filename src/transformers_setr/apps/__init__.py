"""People's tools: `setr segment` (images and folders to label maps, overlays and an index page), `setr demo` (a
Gradio app) and `setr export-onnx` (an onnxruntime-ready graph, its session wrapper and the parity checker).

Each command module has `build_parser()` and `main(argv) -> int`.
"""
