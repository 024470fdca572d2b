"""The [[encrypted]] targets of a manifest's secret, rows and Durable Objects behind one
interface: a pass to the new key, a census of which key each row or object opens under.
What rotations, rollbacks and pushes consult before they change what the Workers hold."""
