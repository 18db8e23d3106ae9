"""Model inspection: what a pretext task does to images and what a pretrained model answers
(``medssl show-corruptions``, ``medssl show-distortions``). Unlike ``report/``, which reads results
files only, these build models and load checkpoints; nothing but the CLI imports them."""
