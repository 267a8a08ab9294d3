"""Insights: the org's images as they are now (each one's latest scan), where an advisory is, and the trend."""
