"""feedback_nlp: multilingual customer feedback in, a scored customer-journey map out.

Importing the package is cheap on purpose: torch, sentence-transformers, spaCy and lingua are
imported inside the steps that need them, so `feedback-nlp --help` answers at once.
"""

__version__ = "0.1.0"
