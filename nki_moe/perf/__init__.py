"""Trainium hardware specs, cost model and roofline helpers."""
