"""Small programs for the project itself (screenshots of the web page); not part of the package."""
