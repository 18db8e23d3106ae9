"""Datasets: MedMNIST loading and label-fraction subsets."""
