"""datablame.cli"""
