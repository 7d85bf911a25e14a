"""The web pages: a kiosk, an organiser's dashboard and an enrollment page (see ``app``)."""
