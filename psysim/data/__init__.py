"""The data every number rests on.

The one transcript form and Psych-101/201 reading (:mod:`.transcripts`),
structured trial tables rendered into transcripts (:mod:`.trials`), and each
study's definitions of a response's options and item (:mod:`.studies`).
"""
