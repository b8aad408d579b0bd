"""Optics shared by the simulators and the models: thin-film contrast on oxidised silicon."""
