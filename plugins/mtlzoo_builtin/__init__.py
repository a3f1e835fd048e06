"""mtlzoo's built-in components, loaded through the ``mtlzoo`` entry points like any plugin.

One family per file, grouped by kind; each file ends with the ``@hookimpl`` that registers it.
"""
