"""What a model reads.

Personas (:mod:`.persona`), the prompt of one participant under one condition
and format (:mod:`.prompt`), chat templates (:mod:`.chat`), and which oldest
trials a model's context forces out (:mod:`.context`).
"""
