"""Retrieval-augmented generation for the Vietnamese maths tutor."""
