"""Teachers: loading (hub ids, local folders, packaged offline models) and one adapter per architecture family."""
