"""The ``lmul-onnx`` command line: click commands that parse, call the library, print."""
