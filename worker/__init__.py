"""The Celery worker: queue <-> analysis <-> database. Holds the model for the life of its process."""
