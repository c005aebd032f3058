import type pg from "pg";

/**
 * What schema holdfast means, as catalog facts that read the same on PostgreSQL 13 to 18:
 * tables and columns, constraints, indexes, views (their columns and the table columns they
 * read, not a deparsed text, which differs between majors), functions (signature, attributes
 * with defaults, attributes and a digest of the body as written), and every grant. One fact per line, sorted.
 */
export async function describeSchema(db: pg.ClientBase | pg.Pool): Promise<string> {
  const { rows } = await db.query<{ line: string }>(`
    with rel as (
      select c.oid, c.relname, c.relkind from pg_class c
      where c.relnamespace = 'holdfast'::regnamespace
    )
    select format('%s %s (%s)', case r.relkind when 'r' then 'table' else 'view' end, r.relname,
      string_agg(format('%s %s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
        case when a.attnotnull then ' not null' else '' end,
        coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')), ', ' order by a.attnum)) as line
    from rel r
    join pg_attribute a on a.attrelid = r.oid and a.attnum > 0 and not a.attisdropped
    left join pg_attrdef d on d.adrelid = r.oid and d.adnum = a.attnum
    where r.relkind in ('r', 'v')
    group by r.relname, r.relkind
    union all
    -- PostgreSQL 18 also lists NOT NULL as constraints (contype 'n'): columns say it already.
    select format('constraint %s on %s: %s', con.conname, r.relname, pg_get_constraintdef(con.oid))
    from pg_constraint con join rel r on r.oid = con.conrelid
    where con.contype <> 'n'
    union all
    select format('index %s', pg_get_indexdef(i.indexrelid))
    from pg_index i join rel r on r.oid = i.indrelid
    union all
    select format('view %s reads %s', r.relname, string_agg(distinct
      format('%s.%s', dep.refobjid::regclass, a.attname), ', '))
    from rel r
    join pg_rewrite rw on rw.ev_class = r.oid
    join pg_depend dep on dep.classid = 'pg_rewrite'::regclass and dep.objid = rw.oid
      and dep.refclassid = 'pg_class'::regclass and dep.refobjid <> r.oid
    join pg_attribute a on a.attrelid = dep.refobjid and a.attnum = dep.refobjsubid
    where r.relkind = 'v'
    group by r.relname
    union all
    select format('function %s(%s) returns %s language %s %s%s%s body md5 %s',
      p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
      l.lanname, case p.provolatile when 'i' then 'immutable' when 's' then 'stable' else 'volatile' end,
      case when p.prosecdef then ' security definer' else '' end,
      coalesce(' set ' || nullif(array_to_string(array(select unnest(p.proconfig) order by 1), ' set '), ''), ''),
      md5(p.prosrc))
    from pg_proc p join pg_language l on l.oid = p.prolang
    where p.pronamespace = 'holdfast'::regnamespace
    union all
    select format('grant %s on %s %s to %s', g.privilege_type, kind, name,
      case when g.grantee = 0 then 'public' else pg_get_userbyid(g.grantee) end)
    from (
      select 'function' as kind, p.oid::regprocedure::text as name, p.proowner as owner, aclexplode(p.proacl) as g0
      from pg_proc p where p.pronamespace = 'holdfast'::regnamespace
      union all
      select 'table', r.relname, c.relowner, aclexplode(c.relacl)
      from rel r join pg_class c on c.oid = r.oid
      union all
      select 'schema', nspname, nspowner, aclexplode(nspacl) from pg_namespace where nspname = 'holdfast'
    ) x cross join lateral (select (x.g0).grantee, (x.g0).privilege_type) g
    where g.grantee <> x.owner
    order by 1`);
  return `${rows.map((r) => r.line).join("\n")}\n`;
}
