"""Local inference runtimes behind one interface. Only this package imports runtime libraries.

- ``base``: the runtime protocol and the request/answer types;
- ``llama_cpp``, ``ort_genai``, ``ort_perception``: one module per runtime library;
- ``factory``: a runtime from a model's configuration;
- ``probe``: which runtimes and execution providers this device has.
"""
