"""Shared test helpers: tiny model builders, scripted servers, reference implementations and
fixture editors. Test files import them absolutely (`from tests.support.X import ...`); modules in
here import each other relatively."""
