/**
 * The embedded upstream's demo data: the seed's `acmedb` catalog, `library.authors` (id, firstname, lastname,
 * salary, public_figure, …) and a `library.books` table to join against.
 */
import { PGlite } from '@electric-sql/pglite';

export const DEMO_SQL = `
CREATE SCHEMA library;
CREATE TABLE library.authors (
  id integer PRIMARY KEY,
  firstname text,
  lastname text,
  salary numeric(10,2),
  public_figure boolean NOT NULL DEFAULT false,
  birth_date date,
  email text
);
CREATE TABLE library.books (id integer PRIMARY KEY, author_id integer REFERENCES library.authors(id), title text, published integer);
INSERT INTO library.authors VALUES
  (1, 'Ada', 'Lovelace', 52000.00, true, '1815-12-10', 'ada@example.org'),
  (2, 'Alan', 'Turing', 61000.00, true, '1912-06-23', 'alan@example.org'),
  (3, 'AAAAA', 'Hidden', 99999.00, false, '1990-01-01', 'hidden@example.org'),
  (4, 'Grace', 'Hopper', 70500.00, false, '1906-12-09', 'grace@example.org'),
  (5, 'Edsger', 'Dijkstra', 58250.50, false, '1930-05-11', 'edsger@example.org'),
  (6, 'Barbara', 'Liskov', 80100.00, true, '1939-11-07', 'barbara@example.org');
INSERT INTO library.books VALUES
  (1, 1, 'Notes on the Analytical Engine', 1843),
  (2, 2, 'On Computable Numbers', 1936),
  (3, 3, 'A Hidden Book', 2001),
  (4, 4, 'A Manual of Operation for the Automatic Sequence Controlled Calculator', 1946),
  (5, 5, 'A Discipline of Programming', 1976),
  (6, 6, 'Abstraction and Specification in Program Development', 1986);
`;

export async function createDemoDatabase(): Promise<PGlite> {
  const db = await PGlite.create();
  await db.exec(DEMO_SQL);
  return db;
}
