"""Models: loading a model, its tokenizer and adapter as a run does, the offline pretrained model, and the tiny random models of each family."""
