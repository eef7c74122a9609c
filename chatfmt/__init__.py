"""The conversation format, one for serving, training and the dataset lab.

How a conversation (OpenAI-shaped messages and tools) becomes the text a model reads —
its own chat template, or ChatML when it has none, with tool calls and tool results in
the Hermes/Qwen format (`chatfmt.tools`) — and how the model's tool calls are read back;
and OpenAI's automatic fine-tuning hyperparameters (`chatfmt.hyper`). `server`,
`finetune` and `datalab` all import it; it imports none of them.
"""
