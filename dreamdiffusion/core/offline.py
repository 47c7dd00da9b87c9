"""Importing this module turns the Hugging Face hub off for the process (`HF_HUB_OFFLINE=1`, unless set).

Stages after `foundation` load every model from `models/`; a stray hub lookup must fail at once
rather than wait on the network. huggingface_hub reads the variable once, when it is first
imported, so a stage script imports this module before anything that imports it."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
