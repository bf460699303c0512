"""Packaging lives in setup.cfg; this file lets ``pip install .`` find it."""

from setuptools import setup

setup()
