"""medssl: self-supervised pretraining on unlabeled medical images and label-efficient fine-tuning."""

__version__ = "0.1.0"
