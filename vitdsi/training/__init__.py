"""Training loops: the DSI's indexing / retrieval / multitask phases (`dsi`, with captions in
`text_dsi`), the plain epoch loop of the other trained retrievers (`loop`), and what they share:
settings (`config`), optimiser and precision (`optim`), input and augmentation (`augment`),
cached frozen-encoder features (`cached_features`) and relevant-pair sampling (`sampler`)."""
