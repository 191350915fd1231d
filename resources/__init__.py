"""Files shipped with the app that are not code: icon and style sheet."""
