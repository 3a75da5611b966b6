"""Layers shared by the heads (the selective scan, MH-Mamba, temporal modules, ...)."""
