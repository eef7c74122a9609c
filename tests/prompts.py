"""Prompts whose answer from the embedded model does not hang on a near tie.

"Which city is the capital of France?" starts with "The" or "Le" 0.03 nats apart on the
Q4_1 GGUF: llama.cpp's AVX2 kernels say "The capital of France is Paris.", its AVX-512
ones "Le Grand Château…". Asked for one sentence, "The" leads by 1.4 nats with every
kernel variant measured (x64, haswell, zen4): the tests ask that.
"""

#: the question the embedded model answers with "The capital of France is Paris."
PARIS_QUESTION = "What is the capital of France? Answer in one sentence."
