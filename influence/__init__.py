"""datablame.influence"""
