"""Model implementations that live outside transformers, served to matrix rows through the custom registry
(a row's `implementation` and `config_class` keys).

Nothing here registers itself on import: the harness registers a row's classes with the auto classes
(`AutoConfig.register` and the row's auto class) in every process that builds the model.
"""
