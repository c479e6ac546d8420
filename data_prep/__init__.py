"""Preparing data outside training: dataset builders, feature extraction, weight conversion."""
