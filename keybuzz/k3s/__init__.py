"""K3s layer (design §E): settings, apps, checks."""
