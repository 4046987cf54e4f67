"""Orchestration across stages: resolve (Hub fetch, extract, resolve-then-apply, verify against a reference),
check (validate -> apply -> loops -> bench), the demo, GGUF import, and a small OpenAI-compatible server.
"""
