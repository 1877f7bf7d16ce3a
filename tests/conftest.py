"""Shared fixtures. Importing remi_tf first sets TF_USE_LEGACY_KERAS."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import remi_tf  # noqa: E402,F401  pylint: disable=unused-import,wrong-import-position

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
