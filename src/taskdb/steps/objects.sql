-- The offline SQL of taskdb.steps.objects (`taskdb sql`): {{name}} placeholders are filled when the script
-- is generated (literals already quoted); the DO blocks read the catalog when the script runs.

-- roles_and_grants --
-- The NOLOGIN group roles, where this role may create roles (roles are cluster-wide: no downgrade drops
-- them); the grants only when all of them exist.
DO $taskdb$
DECLARE
    v_may_create boolean := (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user);
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY {{roles}} LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role);
        IF NOT v_may_create THEN
            RAISE WARNING 'role % does not exist and % may not create roles: grants skipped', v_role, current_user;
            RETURN;
        END IF;
        EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        INSERT INTO taskdb_owned_objects (kind, name, revision) VALUES ('role', v_role, {{revision}})
        ON CONFLICT (kind, name) DO NOTHING;
    END LOOP;
{{grants}}
END
$taskdb$;

-- grants_if_role --
-- Where 0005 made the monitor role.
DO $taskdb$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {{role}}) THEN
{{grants}}
    END IF;
END
$taskdb$;
