"""Keras (.h5, .keras, .weights.h5) import without TensorFlow."""
