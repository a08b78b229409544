"""Carrying out a plan: the executors."""
