"""Models: turning an intent into three tool configurations, and making the models that do it.

Owns the tool schema (`tools`), the bundled intents dataset (`dataset`), prompt texts, output
parsing, the arms (teacher, students, recorded server) and distillation. Imports nothing from
`abtest`, `routing` or `analysis`.
"""
