"""The receiver: the Quart extension, its endpoints and the request pipeline that checks
every webhook before a handler runs. Builds on serving, the stores and the core.
"""
