"""Image features for the index-then-retrieve baselines: SIFT descriptors, visual-word
vocabularies and pretrained CNN backbones (paper section 3.1 and the dense-embedding baseline)."""
