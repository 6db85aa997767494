"""Static files of the web page."""
