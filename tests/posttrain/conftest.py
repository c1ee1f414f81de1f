"""The post-training tests reuse the model tests' Hugging Face fixtures (tests/model)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "model"))
