"""The GGUF engine: llama.cpp through llama-cpp-python, and the GGUF converters."""
